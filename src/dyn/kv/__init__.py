"""KV-cache facts shared by engines and routers: block hashing and cache events."""
