from metis_rag.cli import app

app()
