"""Team annotations → one human label per task: the rules live in `ml_backend.human_labels`
(the project report reads them too, and `ml_backend` never imports `training`)."""

from ml_backend.human_labels import (HumanLabel, annotations_fingerprint, combine_annotations, human_annotations,
                                     is_automatic, votes_of)

__all__ = ["HumanLabel", "annotations_fingerprint", "combine_annotations", "human_annotations", "is_automatic",
           "votes_of"]
