"""Maintainer tools: notebook execution into the book's cache, exercise generation, setup cells.

These need the development environment (requirements.txt); course_lib itself does not.
"""
