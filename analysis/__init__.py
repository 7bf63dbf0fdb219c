"""Attribution of gains to the components of a training recipe."""
