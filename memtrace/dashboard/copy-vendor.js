// Copies the charting library from node_modules (installed by `npm ci` from package-lock.json)
// into dist/vendor/, where the agent embeds it. Run as `npm run build`.
'use strict';
const fs = require('fs');
const path = require('path');

const pkgDir = path.join(__dirname, 'node_modules', 'chart.js');
const candidates = ['chart.umd.min.js', 'chart.umd.js'].map((f) => path.join(pkgDir, 'dist', f));
const source = candidates.find((f) => fs.existsSync(f));
if (!source) {
  console.error(`copy-vendor: none of ${candidates.join(', ')} exists; is chart.js installed (npm ci)?`);
  process.exit(1);
}
const targetDir = path.join(__dirname, 'dist', 'vendor');
const target = path.join(targetDir, 'chart.umd.min.js');
fs.mkdirSync(targetDir, { recursive: true });
fs.copyFileSync(source, target);
const version = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8')).version;
console.log(`copy-vendor: chart.js ${version} ${path.relative(__dirname, source)} -> ${path.relative(__dirname, target)} (${fs.statSync(target).size} bytes)`);
