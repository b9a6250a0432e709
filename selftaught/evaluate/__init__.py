"""Evaluations (`selftaught eval math|judge|distance|curation`), also called by the recipes."""
