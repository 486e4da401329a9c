"""REST protocols: each decodes its bodies into the data plane's inputs and words its answers."""
