"""Layer 4: end-to-end runs over the stages below: pipeline files (``spec``: the typed file, ``run``: one
function per stage, resumable) and the embedded demos (``demo``)."""
