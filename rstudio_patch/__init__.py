"""What runs inside the workspace. For now: JupyterLab defaults for a research workspace
(no news feed or update checks: workspaces reach no internet). The RStudio Submit button lives
here when it is built."""
