"""A user's own net and loss, defined only in the tests: exported by import path
(``userpkg.models:TwoHeadNet``) exactly as a user's package would be."""
