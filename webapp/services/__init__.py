"""Services: the business rules. They take repositories and a unit of work; no Flask, no SQL."""

from webapp.services.catalogue import ProductService
from webapp.services.orders import OrderService, PlacedOrder
from webapp.services.users import UserService

__all__ = ["OrderService", "PlacedOrder", "ProductService", "UserService"]
