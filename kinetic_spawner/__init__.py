"""WorkspaceSpawner: one workspace per Kinetic analysis."""
