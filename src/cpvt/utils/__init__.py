"""Small helpers with no cpvt imports: errors and exit codes, atomic files, tables, plots, the version."""
