"""Calibration: fitting a profile's corrections from runs' predicted-against-achieved reports."""
