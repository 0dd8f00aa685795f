"""The embedded local model: a llama.cpp server child process supervised beside uvicorn, its
model file assembled from a PyPI package, its logs, and generation that stops when the client
hangs up. May import `proxy.state.files`; nothing else of the proxy depends on it but `cli`
and `config.source`.
"""
