"""Linux specifics: the job launch helper, cgroups and namespaces."""
