"""A VM with a real cgroup v2 hierarchy, for the tests the host cannot run."""
