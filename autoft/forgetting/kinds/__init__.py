"""The base-check kinds, one module each, named as the kind a study's `base.kind` gives
(autoft.config.BASE_KINDS lists the files; autoft.forgetting.KINDS imports them)."""
