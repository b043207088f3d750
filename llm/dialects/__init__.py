"""The compatible front doors: each translates one wire format to the NeutralRequest and the outcome back."""
