"""agetool.benchmarks"""
