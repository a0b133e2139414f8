"""A lab in network namespaces: a host with a bridge, VMs as namespaces, a peer.
Shared by the tests, `make demo` and the benchmarks; never touches the
machine's own namespace."""
