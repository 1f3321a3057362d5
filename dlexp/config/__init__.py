"""From config to objects: ``build`` instantiates config nodes with one-line errors, ``validation`` checks the
composed config before any work starts."""
