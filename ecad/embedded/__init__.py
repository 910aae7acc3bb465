"""The embedded model: a small PixArt-α trained here on procedural scenes, and the judge that scores it.

`scenes` is the grammar and the data, `components` builds the pipeline's parts, `training` trains them
(`python -m ecad.embedded.train pipeline`), and `judge` is the classifier behind the `scene_match` and
`scene_correct` metrics (`python -m ecad.embedded.train judge`). See docs/embedded.md.
"""
