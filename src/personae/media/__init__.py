"""Writing and reading media files (PNG metadata, GIF/MP4, sheets, PDF). No torch here."""
