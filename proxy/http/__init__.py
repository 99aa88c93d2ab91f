"""HTTP/1.1 on asyncio protocols with the httptools C parser: the proxy port's server and the upstream client.

aiohttp stays for the metrics port, the 3scale client and the emulator; this package is the hot path only.
"""
