"""Storage format 1, as the release before format 2 wrote it: a test fixture for the upgrade.

These modules are the storage code of that release (git: the parent of the
format-2 work, streamlog/storage/{base,codec,segment,log,checkpoint,segmented,
descriptors,errors,memory}.py), unchanged but for their imports, so the
upgrade tests build data directories exactly as that release left them:
segments named by record offset, 64-byte frames, recovery checkpoints of
versions 1 and 2, topic.json version 1, torn tails after a crash.  Nothing
outside tests/ imports them.
"""
