// Placeholder: the dashboard's real files replace this one.
