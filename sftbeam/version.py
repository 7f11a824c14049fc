"""The sftbeam package version (read by setup.py and dataset_info.json)."""

VERSION = '0.2.0'
