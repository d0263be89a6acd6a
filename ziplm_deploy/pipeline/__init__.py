"""Layer 4: end-to-end runs over the stages below (the embedded demo; pipeline files to come)."""
