"""libvirt's qemu hook: bindings that follow the VM. libvirt runs it at every
step of a domain's life with the domain XML on stdin; at ``start`` it binds
the interfaces whose filter references live in the domain's ``<metadata>``
(engine.libvirt_domain) to the tap names of this start, and at ``stopped``
and ``release`` it removes the domain's bindings. With the learner service
running, the hook hands the change to it (``handoff``: its engine is loaded
and its caches warm); otherwise it does the change in its own process."""

BIND = ("start", "reconnect", "attach")
UNBIND = ("stopped", "release")
