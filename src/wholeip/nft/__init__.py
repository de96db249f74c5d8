"""nftables: the document model, the diff, and the backends that talk to the kernel."""
