//! The benchmark suite. Not written yet: issue 6.

use std::path::Path;

pub fn run(_root: &Path, _binary: &Path, _json: Option<&Path>, _quick: bool) -> anyhow::Result<()> {
    anyhow::bail!("the benchmark suite is not written yet (see issue 6)")
}
