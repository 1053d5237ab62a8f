"""agetool.trainer"""
