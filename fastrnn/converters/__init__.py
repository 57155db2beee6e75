"""Converters from other frameworks into fastrnn.Model; one module per source."""
