"""The local node agent: runs pods bound to its Node as processes in their own network namespaces."""
