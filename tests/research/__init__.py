"""Tests of the research code (research/)."""
