"""Stage 3: renderers. They read a Derivation (and the facts the derivation stage found about
it, ``symbp.derivation.facts``), never re-derive and do no math of their own; every template
renders through ``symbp.output.environment``, every file is written by ``symbp.output.write``
and every PDF is compiled by ``render.pdf``."""
