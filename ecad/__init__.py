"""ecad-server's library. Importing it registers the metrics that live outside `ecad.metrics`."""

import ecad.embedded.metrics  # noqa: F401  (registers scene_match and scene_correct)
