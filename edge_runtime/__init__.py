"""agetool.edge_runtime"""
