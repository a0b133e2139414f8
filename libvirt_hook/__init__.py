"""libvirt's qemu hook: bindings that follow the VM. libvirt runs it at every
step of a domain's life with the domain XML on stdin; at ``start`` it binds
the interfaces whose filter references live in the domain's ``<metadata>``
(engine.libvirt_domain) to the tap names of this start, and at ``stopped``
and ``release`` it removes the domain's bindings."""
