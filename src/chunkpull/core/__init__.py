"""Value types and wire formats, no I/O: names, digests, manifests, chunk lists, progress events, units.

Every other layer builds on these; they import nothing from chunkpull but ``errors``.
"""
