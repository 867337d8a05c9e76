"""HTML reports and pages, torch-free: `html` (shell, style, charts) and `job` (a job's pieces)."""
