"""What a run reports: its pictures (``plots``), the files and pictures of a job (``run_files``) and its
headline numbers (``summary``)."""
