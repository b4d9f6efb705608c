"""The ``Recipe`` and its YAML schema: the one owner of every recipe key."""
