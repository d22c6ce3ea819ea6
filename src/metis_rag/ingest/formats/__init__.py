"""One module per upload format, each a `parse_<format>(data, name, limits)` returning the title
and the sections; `ingest.parsers.parse` picks one by the detected type. `text` holds what they
share: the section types, text normalisation and decoding."""
