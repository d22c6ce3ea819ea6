"""The agentic layer: document analysis, tools, query planning on a graph, evaluation and audit.

`tools` holds the one tool interface and its registry; the planner, the graph run, the
evaluator and the audit log build on it.
"""
