"""hvcore's in-tree hypervisor backends; reach them by name through :func:`hvcore.open_hypervisor`."""
