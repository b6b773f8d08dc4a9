"""The model repository: name -> versions -> served model; loading, swapping and retiring versions."""
