"""Where catalogs live (object stores) and what is known about them (SQL)."""
