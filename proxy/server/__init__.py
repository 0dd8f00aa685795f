"""The HTTP service: the FastAPI app, the pipeline (parse → prepare → run) shared by serving and
probes, request validation, responses, streaming, middleware, drain and the OpenAPI document.
The top of the house: it may import every other package; nothing but `proxy.cli` imports the
app, and `proxy.probes` imports only the pipeline.
"""
