"""Build tooling (standard library only): the folder -> import-name layout and artifact packaging."""
