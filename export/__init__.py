"""agetool.export"""
