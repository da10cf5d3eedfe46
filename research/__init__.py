"""Research beside the openpi package: experiments that compose its parts, their records and their stories."""
