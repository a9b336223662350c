"""The one bound shared by the CEL functions' caches."""

# Caches are keyed by the argument string. Longer arguments (a 1 MiB command line, say) are computed
# without caching, so that 1024 cache entries cannot pin gigabytes of agent-supplied text.
CACHEABLE = 4096
