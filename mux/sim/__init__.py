"""The simulated Xen host: hypervisor table, VIRQ, and a xenstored."""
